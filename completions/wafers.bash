# Bash completion of wafer names for wafers, on top of oclif's completion of commands and flags.
# oclif's completion (wafers autocomplete bash) completes commands and flags only: it has no way
# to complete argument values that change, such as the wafers that exist. Source this file after
# the line `wafers autocomplete bash` added to ~/.bashrc:
#
#   source /path/to/wafers/completions/wafers.bash
#
# It lists $WAFERS (default /var/lib/wafers) or, for unstack, $STACKS (default /var/lib/machines)
# when the shell asks, without starting node. test/completion.test.ts checks that every argument
# the commands call a wafer is covered here.

# Which arguments are wafers, by command: the positions (1 for the first argument) that name an
# existing wafer ("*" for every one), and the flags whose value is a wafer. New names (create's
# NAME, cp's and mv's second argument, a tarball) are left to the shell's default completion.
_wafers_wafer_args() {
  case $1 in
    rm | diff | tree | enable | disable) positions='*' ;;
    stack) positions='1 2' flags='-n --name' ;;
    create) positions='2' ;;
    pull) positions='2' ;;
    push | cp | mv | flatten | export) positions='1' ;;
    build) flags='-t --tag' ;;
    unstack) positions='*' ;;
  esac
}

_wafers_complete_names() {
  local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD - 1]} dir entry names=()
  local positions='' flags='' position=0 word i
  if ((COMP_CWORD >= 2)) && [[ $cur != -* ]]; then
    _wafers_wafer_args "${COMP_WORDS[1]}"
    # The argument's position: words before it that are neither flags nor a wafer flag's value.
    for ((i = 2; i < COMP_CWORD; i++)); do
      word=${COMP_WORDS[i]}
      [[ $word == -* ]] && continue
      [[ " $flags " == *" ${COMP_WORDS[i - 1]} "* ]] && continue
      position=$((position + 1))
    done
    position=$((position + 1))
    if [[ -n $flags && " $flags " == *" $prev "* ]] ||
      [[ $positions == '*' ]] || [[ " $positions " == *" $position "* ]]; then
      dir=${WAFERS:-/var/lib/wafers}
      [[ ${COMP_WORDS[1]} == unstack ]] && dir=${STACKS:-/var/lib/machines}
    fi
    if [[ -n $dir ]]; then
      for entry in "$dir"/*/; do
        [[ -d $entry ]] || continue
        entry=${entry%/}
        names+=("${entry##*/}")
      done
      COMPREPLY=($(compgen -W "${names[*]}" -- "$cur"))
      return 0
    fi
  fi
  if declare -F _wafers_autocomplete >/dev/null; then
    _wafers_autocomplete "$@"
  fi
}

complete -o default -F _wafers_complete_names wafers
