"""Prefect flows: nightly segmentation of new acquisitions, one ``segment-volume`` subflow each.

Prefect lives only here. The flows are thin: discovery, decisions and the
run itself are ``pipeline`` functions; Prefect adds the schedule, retries,
logs in its UI, artifacts and the flow-run identity in the run record.
"""
