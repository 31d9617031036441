"""placeholder until hfcast.drift exists"""
from kfp import dsl
from components.prepare_data import prepare_data

@dsl.pipeline(name="hfcast-monitoring")
def monitoring_pipeline(date: str = ""):
    prepare_data()
