"""Every MNIST_* setting is read and validated in one place, and a bad value names its variable."""

from __future__ import annotations

import pytest

from mnist_pipeline.config import ENVIRONMENT_VARIABLES, PipelineSettings, prepare_tensorflow_environment
from mnist_pipeline.errors import ConfigError, StorageError
from mnist_pipeline.storage import compare_and_swap, open_storage


def test_every_setting_has_its_own_variable() -> None:
    assert set(ENVIRONMENT_VARIABLES) == set(PipelineSettings.__dataclass_fields__)
    assert len(set(ENVIRONMENT_VARIABLES.values())) == len(ENVIRONMENT_VARIABLES)


def test_values_from_the_environment_are_typed() -> None:
    settings = PipelineSettings.from_env(
        {"MNIST_MIN_NEW_IMAGES": "7", "MNIST_REGISTRY_PAGE_TIMEOUT": "0.5", "MNIST_TRAIN_QUEUE": "gpu"}
    )
    assert (settings.min_new_images, settings.registry_page_timeout, settings.train_queue) == (7, 0.5, "gpu")


def test_empty_variables_keep_the_defaults() -> None:
    assert (
        PipelineSettings.from_env({name: "" for name in ENVIRONMENT_VARIABLES.values()}) == PipelineSettings()
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MNIST_STALE_UPLOAD_SECONDS", "0"),
        ("MNIST_STALE_UPLOAD_SECONDS", "-5"),
        ("MNIST_REGISTRY_PAGE_TIMEOUT", "0"),
        ("MNIST_STORAGE_RETRY_DEADLINE", "-1"),
        ("MNIST_MIN_NEW_IMAGES", "0"),
        ("MNIST_MIN_NEW_IMAGES", "-3"),
        ("MNIST_MIN_NEW_IMAGES", "ten"),
        ("MNIST_MAX_TRAIN_IMAGES", "-1"),
        ("MNIST_TRAIN_POOL", "gpu pool"),
        ("MNIST_WORKER_NAME", "a/b"),
        ("MNIST_SCHEDULE", "   "),
        ("MNIST_APPROVAL", "maybe"),
    ],
)
def test_a_bad_value_is_refused_with_its_variable_named(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"environment variable {variable} must be .*got '{value}'"):
        PipelineSettings.from_env({variable: value})


def test_a_bad_value_given_in_code_names_the_setting_and_its_variable() -> None:
    with pytest.raises(ConfigError, match=r"stale_upload_seconds \(MNIST_STALE_UPLOAD_SECONDS\) must be"):
        PipelineSettings(stale_upload_seconds=0)


def test_run_parameters_override_the_environment_and_are_checked_the_same_way() -> None:
    settings = PipelineSettings.from_env({"MNIST_MAX_TRAIN_IMAGES": "100"})
    assert settings.with_overrides(max_train_images=None, source="").max_train_images == 100
    assert settings.with_overrides(max_train_images=5).max_train_images == 5
    with pytest.raises(ConfigError, match="max_train_images"):
        settings.with_overrides(max_train_images=-2)


def test_compare_and_swap_decides_again_after_a_lost_race(tmp_path) -> None:
    storage = open_storage(str(tmp_path))
    seen: list[bytes | None] = []

    def decide(current: bytes | None) -> tuple[bytes, int]:
        seen.append(current)
        if len(seen) == 1:  # another writer gets in between this read and this write
            storage.write_bytes("ledger", b"theirs")
        return (current or b"") + b"+ours", len(seen)

    assert compare_and_swap(storage, "ledger", decide) == 2
    assert seen == [None, b"theirs"] and storage.read_bytes("ledger") == b"theirs+ours"


def test_compare_and_swap_writes_nothing_when_told_to_and_gives_up_on_a_moving_object(tmp_path) -> None:
    storage = open_storage(str(tmp_path))
    assert compare_and_swap(storage, "ledger", lambda current: (None, "kept")) == "kept"
    assert not storage.exists("ledger")

    def always_raced(current: bytes | None) -> tuple[bytes, None]:
        storage.write_bytes("ledger", (current or b"") + b"x")
        return b"mine", None

    with pytest.raises(StorageError, match=r"ledger kept changing; gave up after 5 attempts"):
        compare_and_swap(storage, "ledger", always_raced)


def test_tensorflow_starts_quiet_on_onednn_kernels_unless_the_operator_chose_otherwise() -> None:
    unset: dict[str, str] = {}
    prepare_tensorflow_environment(unset)
    chosen = {"TF_CPP_MIN_LOG_LEVEL": "0", "TF_ENABLE_ONEDNN_OPTS": "0"}
    prepare_tensorflow_environment(chosen)
    assert unset == {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "1"}
    assert chosen == {"TF_CPP_MIN_LOG_LEVEL": "0", "TF_ENABLE_ONEDNN_OPTS": "0"}
