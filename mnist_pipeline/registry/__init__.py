"""The model registry: published versions and the champion pointer on any storage (`store`), its
typed records (`records`), append-only history (`history`), the indexes its readers go through
(`index`) and where every object lives (`layout`), the champion/challenger gate (`gate`),
publication of a version (`publication`), the gated promotion (`promotion`), what a person does
by hand (`operations`) and the named aliases, `champion` among them (`aliases`)."""
