"""Deploying the hub on AWS: the IAM table (``iam.py``), the CloudFormation
template (``template.py``) and the ``jupyter-ds-compute aws ...`` commands
(``cli.py``)."""
