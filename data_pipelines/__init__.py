"""Input pipelines, dataset builders and preprocessing for avjax."""
