"""SLiM: decoder-free masked modelling for skeleton action representations (the library)."""
