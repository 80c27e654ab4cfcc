"""Video decoding/encoding helpers (PyAV) and frame-grid writers."""
