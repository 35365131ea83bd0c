import react from "@vitejs/plugin-react";
import { defineConfig } from "vitest/config";

// `base: "./"`: the bundle works from any origin or folder (a copy a user built
// and serves themselves), not only at the server's `/`.
export default defineConfig({
  base: "./",
  plugins: [react()],
  build: { outDir: "dist", emptyOutDir: true, sourcemap: false, target: "es2022" },
  test: { environment: "node", include: ["src/**/*.test.ts"] },
});
