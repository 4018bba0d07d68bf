#!/usr/bin/env bash
# Install the system packages the labeling tests need: chromium + chromium-driver, postgresql (Debian).
# Quiet, non-interactive, no recommended extras; retries a failed `apt-get update` (a flaky mirror).
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  exit 0  # already there
fi
SUDO=()
[ "$(id -u)" = 0 ] || SUDO=(sudo)
for attempt in 1 2 3; do
  if "${SUDO[@]}" apt-get update -qq; then break; fi
  [ "$attempt" = 3 ] && { echo "install_services: apt-get update failed 3 times" >&2; exit 1; }
  sleep 5
done
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  chromium chromium-driver postgresql >/dev/null
