"""What a job is and what it receives: the job spec, a boto3 request turned into one, the
SageMaker contract each host gets, and S3 URIs."""
