"""The contracts both sides share: errors, atomic writes, the workdir layout, plan.json's model, FFN parameters.

Imports nothing else from hpcffn, and nothing heavier than pydantic.
"""
