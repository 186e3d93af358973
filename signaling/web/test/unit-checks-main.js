// The page's entry point: a file, since the CSP allows no inline script.
import { namesOf, runOrderChecks, videoOpen, videoSeal } from './unit-checks.js';
window.runOrderChecks = runOrderChecks;
window.namesOf = namesOf;
window.videoSeal = videoSeal;
window.videoOpen = videoOpen;
window.checksReady = true;
