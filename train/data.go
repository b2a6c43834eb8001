package train

import (
	"fmt"

	"github.com/loomtrain/loom/data"
	"github.com/loomtrain/loom/jobspec"
)

// OpenData loads the dataset job names: examples (mnist, idx), or a corpus
// cut into windows of the model's context: byte-level text (text) or token
// shards (tokens). A data.tokenizer in the job must be the one the tokens
// were made with.
func OpenData(job *jobspec.Job) (*data.Split, error) {
	var ts *data.TextSplit
	var err error
	switch job.Data.Dataset {
	case "text":
		ts, err = data.LoadText(job.DataPath(), job.Model.Context)
	case "tokens":
		ts, err = data.LoadTokens(job.DataPath(), job.Model.Context)
	default:
		return data.Open(job.Data.Dataset, job.DataPath())
	}
	if err != nil {
		return nil, err
	}
	if want := job.Data.Tokenizer; want != "" && ts.Tokenizer != want {
		return nil, fmt.Errorf("shards in %s were made with tokenizer %s (vocab %d), the job asks for %s (data.tokenizer)",
			job.DataPath(), ts.Tokenizer, ts.Vocab, want)
	}
	return &data.Split{Text: ts, Source: ts.Source}, nil
}
