// Package js holds the JavaScript client of hubcluster (hubcluster.js, an ES
// module for browsers and Node) for Go code that serves it: the demo page
// embeds it from here, so the binary and the npm package carry one copy.
package js

import _ "embed"

// Module is the source of hubcluster.js.
//
//go:embed hubcluster.js
var Module string
