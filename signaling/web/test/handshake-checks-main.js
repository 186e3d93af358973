// The page's entry point: a file, since the CSP allows no inline script.
import { runHandshakeChecks } from './handshake-checks.js';
window.runHandshakeChecks = async () => {
  const result = await runHandshakeChecks();
  document.getElementById('result').textContent = JSON.stringify(result, null, 2);
  return result;
};
window.checksReady = true;
