// The page's entry point: a file, since the CSP allows no inline script.
import {
  namesOf,
  runOrderChecks,
  runTrickleChecks,
  trickleParse,
  videoOpen,
  videoSeal,
} from './unit-checks.js';
window.runOrderChecks = runOrderChecks;
window.runTrickleChecks = runTrickleChecks;
window.trickleParse = trickleParse;
window.namesOf = namesOf;
window.videoSeal = videoSeal;
window.videoOpen = videoOpen;
window.checksReady = true;
