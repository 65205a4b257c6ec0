import {includeIgnoreFile} from '@eslint/compat'
import oclif from 'eslint-config-oclif'
import prettier from 'eslint-config-prettier'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

const gitignorePath = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '.gitignore')

// oclif's configuration, as oclif/plugin-plugins runs it, with prettier's last (prettier formats).
// Each rule turned off below is a decision for this codebase, with its reason; none is turned off
// by a comment in the code unless that line says why.
export default [
  includeIgnoreFile(gitignorePath),
  {ignores: ['docs/**', 'plugins/*/dist/**']},
  ...oclif,
  prettier,
  {
    rules: {
      // OCI and Docker JSON spell their fields so (diff_ids, created_by, empty_layer): read as they are.
      camelcase: ['error', {ignoreDestructuring: true, ignoreImports: true, properties: 'never'}],
      // Signals, not gates: long functions here are state machines (a tar reader, a step loop) that
      // read better whole; the warnings stay visible in `npm run lint`.
      complexity: 'warn',
      'max-depth': 'warn',
      'max-params': 'warn',
      // A file system is walked in order on purpose here (a parent before its children, one lock
      // after another, a mount before its use); concurrency is bounded where it pays (mapLimit).
      // The 200 comments that said so one loop at a time are gone with this one decision.
      'no-await-in-loop': 'off',
      // Modes, device numbers, open flags, capability sets and seccomp words are bit fields.
      'no-bitwise': 'off',
      // Tar headers, mount tables and terminal output are full of control characters: the regular
      // expressions that match them mean to.
      'no-control-regex': 'off',
      // Sorted imports, keys and members would churn every file for no reader's benefit now; the
      // order of keys in --json results is the order users read, and is kept by hand.
      'perfectionist/sort-classes': 'off',
      'perfectionist/sort-exports': 'off',
      'perfectionist/sort-imports': 'off',
      'perfectionist/sort-interfaces': 'off',
      'perfectionist/sort-named-exports': 'off',
      'perfectionist/sort-named-imports': 'off',
      'perfectionist/sort-object-types': 'off',
      'perfectionist/sort-objects': 'off',
      'perfectionist/sort-sets': 'off',
      'perfectionist/sort-switch-case': 'off',
      'perfectionist/sort-union-types': 'off',
      // `const first = list[0]` and `const size = header.size` read as well as destructuring does.
      'prefer-destructuring': 'off',
      // Mocha's `function () {this.timeout(...)}` needs a function, not an arrow.
      'prefer-arrow-callback': 'off',
      // A step object's closures over the state of its command are how steps read (STYLE.md).
      'unicorn/consistent-function-scoping': 'off',
      // Its fix drops `undefined` arguments and returns that typed signatures ask for.
      'unicorn/no-useless-undefined': 'off',
      // Node's fetch (ADD of a URL, the tests' registries) is in every Node wafers runs on, 20.17 and 24.
      'n/no-unsupported-features/node-builtins': ['error', {ignores: ['fetch', 'Response', 'fs.promises.cp']}],
      // `new Promise((resolve) => setTimeout(resolve, ms))` is how a pause is written.
      'no-promise-executor-return': 'off',
      // Deprecated upstream; `return await` inside try is what makes its catch run.
      'no-return-await': 'off',
      // A server's handler refers to the object it is about to be stored in, before it is.
      'prefer-const': ['error', {ignoreReadBeforeAssign: true}],
      // `void promise` says on purpose that nobody waits for it.
      'no-void': 'off',
      // Underscored parameters are the hook signatures plugins implement, unused on purpose.
      '@typescript-eslint/no-unused-vars': ['error', {argsIgnorePattern: '^_', varsIgnorePattern: '^_'}],
      // unicorn's preferences of form, where either form reads as well and the one here was chosen:
      // else-if chains over switch, if over ternary, classic loops where an index is used, find over
      // filter()[0] where the filter is the point, push per case, a default object parameter.
      // fromCharCode is right for tar's bytes; 'utf-8' is the WHATWG label; Boolean loses a type guard.
      'unicorn/explicit-length-check': 'off',
      'unicorn/escape-case': 'off',
      'unicorn/import-style': 'off',
      'unicorn/no-array-for-each': 'off',
      'unicorn/no-array-push-push': 'off',
      'unicorn/no-array-reduce': 'off',
      'unicorn/no-for-loop': 'off',
      'unicorn/no-lonely-if': 'off',
      'unicorn/no-negated-condition': 'off',
      'unicorn/no-object-as-default-parameter': 'off',
      'unicorn/no-unreadable-array-destructuring': 'off',
      'unicorn/prefer-array-find': 'off',
      'unicorn/prefer-code-point': 'off',
      'unicorn/prefer-includes': 'off',
      'unicorn/prefer-native-coercion-functions': 'off',
      'unicorn/prefer-set-has': 'off',
      'unicorn/prefer-string-starts-ends-with': 'off',
      'unicorn/prefer-switch': 'off',
      'unicorn/prefer-ternary': 'off',
      'unicorn/text-encoding-identifier-case': 'off',
      // A few escaped backslashes in messages and regular expressions read plainer than String.raw.
      'unicorn/prefer-string-raw': 'off',
      // 0o7777 and 0x10000000 are bit masks, read by their digits.
      'unicorn/numeric-separators-style': 'off',
    },
  },
  {
    // Test helpers are modules the tests import; only the test files themselves are suites, and a
    // test file may hold several.
    files: ['test/**'],
    languageOptions: {globals: {Mocha: 'readonly'}},
    rules: {
      'mocha/max-top-level-suites': 'off',
      'mocha/no-exports': 'off',
      'mocha/no-top-level-hooks': 'off',
      // Containerfiles spell build args as ${NAME}: the tests write them so on purpose.
      'no-template-curly-in-string': 'off',
    },
  },
  {
    // Whole programs end with an exit code.
    files: ['bin/**', 'bench/**', 'scripts/**', 'test/run.js', 'test/fixtures/**', 'src/lib/ui/interrupt.ts'],
    rules: {'n/no-process-exit': 'off', 'n/no-unpublished-bin': 'off', 'unicorn/no-process-exit': 'off'},
  },
]
