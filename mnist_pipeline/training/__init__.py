"""Training: the table of model architectures (`architectures`), the trainer under
`tf.distribute.MirroredStrategy` (`trainer`), its callbacks and resumable checkpoints, model
serialisation (`model_io`) and the training record. TensorFlow loads only when a function runs."""
