"""The run library: plan a run's shards, generate them (`worker`), commit them, score them,
select from them and assemble per-arm results, as plain functions over a `ShardStore`.

Prefect tasks (`tasks/`) and flows (`flows/`) are thin wrappers over these modules; nothing
here imports Prefect or Ray, so a script or a test drives a run the same way.
"""
