// Package deploy holds loom's deployment files; its tests validate them.
package deploy
