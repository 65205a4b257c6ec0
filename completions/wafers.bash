# Bash completion of wafer names for wafers, on top of oclif's completion of commands and flags.
# oclif's completion (wafers autocomplete bash) completes commands and flags only: it has no way
# to complete argument values that change, such as the wafers that exist. Source this file after
# the line `wafers autocomplete bash` added to ~/.bashrc:
#
#   source /path/to/wafers/completions/wafers.bash
#
# It lists $WAFERS (default /var/lib/wafers) or, for unstack, $STACKS (default /var/lib/machines)
# when the shell asks, without starting node.

_wafers_complete_names() {
  local cur=${COMP_WORDS[COMP_CWORD]} dir entry names=()
  if ((COMP_CWORD >= 2)) && [[ $cur != -* ]]; then
    case ${COMP_WORDS[1]} in
      unstack) dir=${STACKS:-/var/lib/machines} ;;
      stack | diff | rm | tree | enable | disable | cp | mv | flatten) dir=${WAFERS:-/var/lib/wafers} ;;
      # The wafer, then the tarball: a file name, which the shell's default completion offers.
      export) ((COMP_CWORD == 2)) && dir=${WAFERS:-/var/lib/wafers} ;;
    esac
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
