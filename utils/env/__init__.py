"""Where we run and how we talk to it: ``paths`` (Kaggle, Colab or a clone), ``gpu``, ``secrets``, ``tracking``
(wandb), ``fileio`` (durable writes), ``console`` (progress lines), ``csv_input`` (reading a user's CSV).
Imports nothing from the other packages."""
