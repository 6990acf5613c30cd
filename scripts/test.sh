#!/usr/bin/env bash
# Run the test suite: creates .venv on first use, then pytest. Extra arguments go to pytest.
# PostgreSQL gallery tests run when FACESEARCH_TEST_PG_URL is set (.ci/run starts a server and sets it).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
python -m pytest -q "$@"
