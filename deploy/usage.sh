# --help and option errors, the same for every shell command of the kit
# (scripts/, deploy/). A command's usage is its header comment: the comment
# lines after `#!`. Call usage_on_help first, before anything that changes
# something, then parse the options, calling usage_error for what is unknown:
#
#   usage_on_help "$@"             -h/--help before any "--": usage, exit 0
#   usage_error "unknown option"   message and usage on stderr, exit 2
#   no_arguments "$@"              for commands that take none
#   operands_only "$@"             for commands that take no options
# shellcheck shell=bash

print_usage() {
  sed -n '2,/^[^#]/{/^# shellcheck/d; /^#/s/^# \{0,1\}//p}' "$0"
}

usage_on_help() {
  local arg
  for arg in "$@"; do
    case $arg in
      --) return 0 ;;
      -h|--help) print_usage; exit 0 ;;
    esac
  done
}

usage_error() {
  printf '%s: %s\n\n' "${0##*/}" "$1" >&2
  print_usage >&2
  exit 2
}

no_arguments() {
  [ $# -eq 0 ] || usage_error "unexpected argument: $1"
}

operands_only() {
  local arg
  for arg in "$@"; do
    case $arg in --) return 0 ;; -*) usage_error "unknown option: $arg" ;; esac
  done
}
