"""The work of the `adapt` verbs that are not a single Lightning fit: evaluate (and scoring prediction files),
experiments, test-time adaptation, translate, fda."""
