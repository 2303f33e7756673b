// ESLint for the Lab extension (labextension/), after jupyterlab/extension-template:
// eslint + typescript-eslint + @jupyter/eslint-plugin, formatting by prettier.
// Run: npm run lint:check (CI) or npm run lint (fixes what it can).
import js from '@eslint/js';
import { defineConfig } from 'eslint/config';
import tseslint from 'typescript-eslint';
import prettierRecommended from 'eslint-plugin-prettier/recommended';
import globals from 'globals';
import jupyterPlugin from '@jupyter/eslint-plugin';

export default defineConfig([
  {
    // Only the extension's own sources: the Python package, its built assets,
    // docs and tests are not linted here.
    ignores: [
      '**/node_modules/**',
      'lib/**',
      'jupyter_ds_compute/**',
      'docs/**',
      'tests/**',
      'benchmarks/**',
      'configs/**',
      'test-artifacts/**',
      'build/**',
      'dist/**',
      '.venv/**',
      '**/*.js',
      '**/*.d.ts'
    ]
  },
  js.configs.recommended,
  tseslint.configs.recommended,
  jupyterPlugin.configs.recommended,
  {
    files: ['**/*.ts', '**/*.tsx'],
    languageOptions: {
      globals: {
        ...globals.browser,
        ...globals.es2015
      },
      parserOptions: {
        project: 'tsconfig.json',
        sourceType: 'module'
      }
    },
    rules: {
      '@typescript-eslint/naming-convention': [
        'error',
        {
          selector: 'interface',
          format: ['PascalCase'],
          custom: {
            regex: '^I[A-Z]',
            match: true
          }
        }
      ],
      '@typescript-eslint/no-unused-vars': ['warn', { args: 'none' }],
      '@typescript-eslint/no-explicit-any': 'off',
      '@typescript-eslint/no-namespace': 'off',
      '@typescript-eslint/no-use-before-define': 'off',
      eqeqeq: 'error',
      'prefer-arrow-callback': 'error'
    }
  },
  {
    // The node --test unit tests (labextension/test/*.mjs).
    files: ['**/*.mjs'],
    languageOptions: {
      globals: { ...globals.node }
    }
  },
  prettierRecommended,
  {
    // After prettierRecommended, which turns `curly` off (eslint-config-prettier).
    files: ['**/*.ts', '**/*.tsx'],
    rules: {
      curly: ['error', 'all']
    }
  }
]);
