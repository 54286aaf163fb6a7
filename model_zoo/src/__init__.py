"""Sources of the model zoo: networks (``models``), data pipelines (``dataset``)."""
