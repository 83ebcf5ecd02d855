import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // One file at a time: integration and e2e files start their own slapd and
    // VMs on one libvirtd, and this machine has two cores.
    fileParallelism: false,
    projects: [
      { test: { name: 'unit', include: ['test/unit/**/*.test.ts'] } },
      { test: { name: 'integration', include: ['test/integration/**/*.test.ts'], testTimeout: 60_000, hookTimeout: 60_000 } },
      { test: { name: 'e2e', include: ['test/e2e/**/*.test.ts'], testTimeout: 300_000, hookTimeout: 180_000 } },
    ],
  },
});
