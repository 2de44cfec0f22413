# shellcheck shell=bash
# Source this at the start of a one-off device-tool command (run from the repository root; carry [".whl"]):
#   . tools/device_env.sh && python3 ...
# The lease environment (tools/device_lib.sh), the carried wheels installed into /tmp/site, and the versions printed.
. tools/device_lib.sh
lease_wheels || return 1
lease_versions || return 1
