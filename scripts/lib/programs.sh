# install_programs PROGRAM:PACKAGE... — installs (apt) the packages of the programs not on PATH. Sourced by
# scripts/install-test-deps.sh and scripts/posix-conformance.sh.
install_programs() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}
