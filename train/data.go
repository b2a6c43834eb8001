package train

import (
	"github.com/loomtrain/loom/data"
	"github.com/loomtrain/loom/jobspec"
)

// OpenData loads the dataset job names: examples (mnist, idx) or a text
// corpus cut into windows of the model's context (text).
func OpenData(job *jobspec.Job) (*data.Split, error) {
	if job.Data.Dataset == "text" {
		ts, err := data.LoadText(job.DataPath(), job.Model.Context)
		if err != nil {
			return nil, err
		}
		return &data.Split{Text: ts, Source: ts.Source}, nil
	}
	return data.Open(job.Data.Dataset, job.DataPath())
}
