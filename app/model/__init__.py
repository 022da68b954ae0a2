"""What every layer shares and none owns: the vocabulary (vocabulary.py), the query model
(query.py), the rows ingest produces (rows.py), the rollups' arithmetic (rollup.py), the
duration histogram (quantiles.py) and the checks that a client's JSON can be stored
(storable.py). Pure Python: it imports nothing of ingest, query or storage, and no
database driver, so all of it is testable without one.
"""
