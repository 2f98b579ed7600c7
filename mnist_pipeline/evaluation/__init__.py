"""Evaluation: test-set metrics (`metrics`), report figures (`reports`), the model card
(`model_card`), the clean-process serving check (`serving`) and the evaluation record.
Independent of `training`: it judges any Keras model it is given."""
