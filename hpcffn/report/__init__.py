"""`hpcffn report`: one HTML page with pictures of an experiment (login node, `report` extra).

Only the report command imports this package, so plan/submit/status never load matplotlib.
"""
