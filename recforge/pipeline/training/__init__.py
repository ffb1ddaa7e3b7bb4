"""Training: every model family on one day's features, tracked in MLflow (``train``), and the front door of a
nightly run (``nightly``: checking its params before Airflow starts, reporting after it ends)."""
