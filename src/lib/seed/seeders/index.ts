import type {Seeder} from '../../hooks.js'
import {busyboxSeeder} from './busybox.js'
import {dirSeeder} from './dir.js'
import {tarSeeder} from './tar.js'

/** The seeders built into wafers, offered through its own `wafers:seeders` hook. */
export const BUILTIN_SEEDERS: Seeder[] = [busyboxSeeder, dirSeeder, tarSeeder]
