"""``convoy bench``: the service measured against a baseline in the same run, on the same
machine. A package of its own, beside the API, the workers and the models it starts: the
API package imports no torch, and nothing here is imported by the service."""
