// The page's entry point: a file, since the CSP allows no inline script.
import { runVectors } from './sframe-vectors.js';
window.runVectors = async (text) => {
  const result = await runVectors(text);
  document.getElementById('result').textContent = JSON.stringify(result, null, 2);
  return result;
};
window.vectorsReady = true;
