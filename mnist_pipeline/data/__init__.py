"""Data: fetch a source (`sources`; the canonical MNIST once, into Keras' cache: `keras_cache`),
parse and validate MNIST (`mnist`), store content-addressed snapshots (`snapshot`), take in new
labelled shards (`incoming`), assemble a run's training set (`training_set`) and feed it to Keras
(`tf_data`). Imports only the foundation modules."""
