"""What the DAG files take from the library on Airflow's side: the trigger form's Params and the
schedule (`form`), the approval operator (`approval`), and which failures Airflow retries
(`failures`). These modules import Airflow, never TensorFlow: the DAG files import them when
they are parsed."""
