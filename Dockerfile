# syntax=docker/dockerfile:1
# Airflow's official image plus this package. Two targets:
#   cpu: tensorflow-cpu, for the scheduler, api-server, dag-processor, triggerer and CPU workers
#   gpu: tensorflow[and-cuda] (CUDA and cuDNN from PyPI wheels), for the workers on queue `gpu`
# Build: docker build --target cpu -t mnist-airflow:cpu .   (docker compose builds both)
# No credential is ever copied into an image: compose mounts them read-only at run time.
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11

FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION} AS base
ARG AIRFLOW_VERSION
# The image's own non-root user (uid 50000); pip installs into its user site.
USER airflow
ENV TF_CPP_MIN_LOG_LEVEL=2 \
    PYTHONUNBUFFERED=1
COPY --chown=airflow:0 pyproject.toml README.md /opt/mnist/
COPY --chown=airflow:0 mnist_pipeline /opt/mnist/mnist_pipeline

FROM base AS cpu
# Naming apache-airflow's exact version keeps pip from moving the image's Airflow.
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" "/opt/mnist[cpu,cluster]"
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins

FROM base AS gpu
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" "/opt/mnist[gpu,cluster]"
# GPU memory grows on demand (set in the library too); one task process per GPU (worker concurrency).
ENV TF_FORCE_GPU_ALLOW_GROWTH=true
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins
