"""The HTTP service: a thin FastAPI layer over the library (see ``app.create_app``)."""
