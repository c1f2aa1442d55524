"""A stand-in for Colab's ``google.colab`` package (tests only): just ``userdata``."""
