//go:build race

package cpu

// raceEnabled trims the slowest single-threaded checks under -race, where
// they find no races and run ~10× slower.
const raceEnabled = true
