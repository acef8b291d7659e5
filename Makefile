# The two commands of the README. Each sets itself up (virtual environment, requirements).
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test setup deploy-run

$(STAMP): requirements.txt
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $(STAMP)

setup: $(STAMP)

# The service on its embedded default: web + worker in one process. Webhook secrets are
# generated once into .env (git-ignored) unless the environment already has them.
run: $(STAMP)
	@test -f .env || $(VENV)/bin/python -c "import secrets; print('\n'.join(f'export {n}={secrets.token_urlsafe(24)}' for n in ('AMO_WEBHOOK_SECRET', 'TELEGRAM_WEBHOOK_SECRET')))" > .env
	. ./.env && $(VENV)/bin/python webhooks.py

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

# Production on one machine: gunicorn and the workers under supervisord (deploy/, docs/deploy.md);
# the environment from deploy/crmbridge.env (start from deploy/crmbridge.env.example).
deploy-run: $(STAMP)
	deploy/supervise
