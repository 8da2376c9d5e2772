"""evilm core library: models, data, training engines. Never prints; reports via logging."""

__version__ = "0.1.0"
