# Two entry points: `make demo` and `make test`. Both are idempotent and set up a fresh
# Debian 12 machine as root: system packages, the tests' non-root supervisor account, the .venv.
SHELL := /bin/bash
VENV := .venv
# Debian's interpreter: world-readable, so every kernel's transient uid can execute it (one
# built under a private home directory, mode 0700, cannot be run by anyone else).
PYTHON := /usr/bin/python3
# Kernels get transient uids with no account (privilege.uid_range); "nobody" stands in for
# them when checking that the venv is usable by a uid that owns nothing.
PROBE_UID := 65534
# A second, non-root account: the tests run supervisors as it to prove the rootless paths.
SUPERVISOR_ACCOUNT := sandbox-supervisor
SUPERVISOR_UID := 65533
APT_PACKAGES := bubblewrap nftables slirp4netns util-linux iproute2 libseccomp2 python3-venv nodejs dnsmasq-base \
	chromium-headless-shell

# The end-to-end JupyterHub test's proxy (npm), installed here rather than globally.
HUB_TOOLS := .hub-tools
CHP := $(HUB_TOOLS)/node_modules/.bin/configurable-http-proxy

.PHONY: demo test setup system accounts venv

demo: setup
	$(VENV)/bin/sandbox-kernel doctor
	@# The kernelspec JupyterLab offers (and the demo notebooks name): sandboxed, never plain.
	$(VENV)/bin/sandbox-kernel install --sys-prefix
	$(VENV)/bin/sandbox-kernel run notebooks/demo.ipynb --policy notebooks/demo-policy.toml \
	  --cell-timeout 60 --notebook-timeout 300 --output-dir sandbox-out --summary sandbox-out/summary.json
	@echo "Next, in JupyterLab: $(VENV)/bin/jupyter lab --allow-root notebooks/lab-tour.ipynb"

# The whole suite on this machine's mount table as it is, then the integration suite again on
# shared propagation (systemd's default, the shape of most hosts): in a private copy of the
# mount table made rshared, so nothing there can reach the real host's mounts.
SHARED_MOUNTS := unshare --mount --propagation private -- /bin/sh -c 'mount --make-rshared / && exec "$$@"' sh

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest
	@echo "== integration suite on shared mount propagation (a private rshared copy of the mount table)"
	$(SHARED_MOUNTS) $(VENV)/bin/python -m pytest tests/integration

setup: system accounts venv $(CHP)

$(CHP):
	npm install --prefix $(HUB_TOOLS) --no-audit --no-fund --loglevel=error configurable-http-proxy@5 || \
	  echo "WARNING: npm could not install configurable-http-proxy: the JupyterHub end-to-end test will be SKIPPED"

system:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@# Rootless egress (slirp4netns as a non-root supervisor) opens /dev/net/tun; Debian's udev
	@# default is 0666, some VM images ship it 0600.
	@[ ! -c /dev/net/tun ] || [ "$$(stat -c %a /dev/net/tun)" = 666 ] || chmod 0666 /dev/net/tun

accounts:
	@getent group $(SUPERVISOR_ACCOUNT) >/dev/null || groupadd -g $(SUPERVISOR_UID) $(SUPERVISOR_ACCOUNT)
	@id -u $(SUPERVISOR_ACCOUNT) >/dev/null 2>&1 || useradd -u $(SUPERVISOR_UID) -g $(SUPERVISOR_UID) -M -d /nonexistent -s /usr/sbin/nologin $(SUPERVISOR_ACCOUNT) 2>/dev/null

# The JupyterLab extension: TypeScript in labextension/, built into sandbox_kernel/labextension
# (not committed) from the npm registry. `pip install -e` builds it the first time (through
# hatch-jupyter-builder); afterwards this rule rebuilds it when a source changes.
LABEXT_SOURCES := $(wildcard labextension/src/*.ts labextension/style/*) labextension/package.json \
	labextension/yarn.lock labextension/tsconfig.json labextension/.yarnrc.yml labextension/install.json
LABEXT_BUILT := sandbox_kernel/labextension/package.json

venv: $(VENV)/.installed $(LABEXT_BUILT)
	@chmod -R a+rX $(VENV) sandbox_kernel tests notebooks
	@# Every kernel's uid and the supervisor account must reach .venv: give search (not read)
	@# permission on any parent directory that lacks it, and say so.
	@d="$$(pwd)"; while [ "$$d" != / ]; do \
	  if [ "$$(( 0$$(stat -c %a "$$d") & 01 ))" = 0 ]; then echo "note: chmod o+x $$d (kernels' uids must traverse it)"; chmod o+x "$$d"; fi; \
	  d="$$(dirname "$$d")"; done
	@setpriv --reuid=$(PROBE_UID) --regid=$(PROBE_UID) --clear-groups $(VENV)/bin/python -c "import sandbox_kernel" 2>/dev/null || \
	  { echo "error: a uid that owns nothing cannot run $(VENV)/bin/python; make the path to this repository world-traversable (chmod o+x on each parent directory)"; exit 1; }

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	@# Lab loads the extension from the build dir (a link), so a rebuild needs no reinstall.
	cp labextension/install.json sandbox_kernel/labextension/
	$(VENV)/bin/jupyter-builder develop --overwrite . >/dev/null
	touch $@

$(LABEXT_BUILT): $(LABEXT_SOURCES) | $(VENV)/.installed
	cd labextension && PATH="$(CURDIR)/$(VENV)/bin:$$PATH" jlpm install --immutable && PATH="$(CURDIR)/$(VENV)/bin:$$PATH" jlpm build:prod
	cp labextension/install.json sandbox_kernel/labextension/
	touch $@
