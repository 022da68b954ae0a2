# Shortcuts for the scripts in scripts/ (which work without make).
.PHONY: run test lint bench
run:
	./scripts/serve
test:
	./scripts/test
lint:
	.venv/bin/ruff check app tests bench
bench:
	.venv/bin/python bench/ingest.py && .venv/bin/python bench/query.py
