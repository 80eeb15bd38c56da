"""What a run wrote: the run record (its writer and readers), its typed models, the archives
SageMaker would upload, and the metrics parsed from its logs."""
