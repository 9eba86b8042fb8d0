# crib: one command brings the stack up on defaults, one runs the tests.
.PHONY: up down test deps venv bench lint

up:
	bash scripts/up.sh

down:
	bash scripts/down.sh

test:
	bash scripts/test.sh

bench:
	bash scripts/bench.sh

lint:
	.venv/bin/python -m mypy libs/common/crib_common services
