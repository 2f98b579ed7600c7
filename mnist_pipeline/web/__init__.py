"""The registry page in the Airflow UI: a read-only FastAPI app (`app`), its Jinja2 templates
(`templates/*.html`) and the `promote` task's extra link (`link`)."""
