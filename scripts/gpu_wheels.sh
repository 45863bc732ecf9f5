#!/usr/bin/env bash
# The Python packages `lmcsweep run` needs that a lent GPU machine's image lacks (Python 3.12 there,
# no registry reachable), downloaded here as cp312 wheels into .whl/ (ignored by git), to be carried
# to the machine; docs/performance.md gives the call that installs them there and runs bench/gpu.sh
# and bench/gpu_sweep.sh. The list: mlflow-skinny (the tracking client and its SQLite store),
# SQLAlchemy, alembic, pydantic, and what they need beyond the image's packages.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
PY=${PYTHON:-.venv/bin/python}
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl \
    alembic==1.20.1 annotated_types==0.8.0 cachetools==7.3.3 cffi==2.1.1 cryptography==50.0.2 \
    databricks_sdk==0.162.0 fastapi==0.165.0 gitdb==4.0.12 gitpython==3.2.1 google_auth==2.63.0 \
    importlib_metadata==9.1.0 mako==1.4.3 mlflow_skinny==3.17.2 opentelemetry_api==1.45.2 \
    opentelemetry_proto==1.45.2 opentelemetry_sdk==1.45.2 opentelemetry_semantic_conventions==0.66b2 \
    protobuf==7.36.2 pyasn1==0.6.5 pyasn1_modules==0.4.2 pycparser==3.12 pydantic==2.14.4 \
    pydantic_core==2.50.5 python_dotenv==1.2.4 smmap==5.0.3 sqlalchemy==2.1.9 sqlparse==0.6.1 \
    starlette==1.10.0 typing_extensions==4.16.0 typing_inspection==0.4.5 uvicorn==0.54.0
ls .whl | wc -l
